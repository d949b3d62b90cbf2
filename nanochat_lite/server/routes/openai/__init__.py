"""The OpenAI-compatible doors: `/v1/chat/completions` (chat), `/v1/completions`
(completions), their shared parameters (params) and tool calls (tools)."""
