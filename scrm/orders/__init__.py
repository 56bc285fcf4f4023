"""Orders reported by the shop (signed API or CSV import), their refunds, and which customer each
order belongs to (external_userid, else unionid, else normalised mobile)."""
