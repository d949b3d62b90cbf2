"""The chat core: the process's life cycle (runtime), one chat turn (turns), answers that
outlive a connection (answers), graceful shutdown (shutdown), semantic search (semantic).
Routes call into this room; it never imports a route."""
