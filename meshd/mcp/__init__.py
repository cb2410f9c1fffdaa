"""meshd as an MCP server: tools, resources and change notifications for agents driven by a
language model, over stdio (`meshd mcp`) or streamable HTTP (`/mcp` when `mcp = true`).

Every tool is a call to meshd's own HTTP API with the session's credentials, so validation,
errors, limits and identity rules are the API's by construction; this package opens no
database. The `mcp` SDK is imported only by this package, and this package only when used.
"""
