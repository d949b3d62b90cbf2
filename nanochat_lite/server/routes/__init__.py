"""HTTP and WebSocket routes: each module translates one door (our API, the WebSocket, the
OpenAI-compatible `/v1`) into calls on the chat core. A route never imports another route;
what two routes share lives one room down."""
