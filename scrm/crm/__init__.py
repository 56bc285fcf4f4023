"""CRM follow-up records (销售跟进记录): chats, calls and SMS merged per customer on the mobile
number, split into sessions, summarised by explainable rules, and judged for service quality."""
