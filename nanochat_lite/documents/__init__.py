"""Documents: parse (txt/md/html/pdf/docx), chunk by the embedder's tokens, search (hybrid).

This room turns uploaded files into chunks and finds the chunks that answer a query.
parse, chunk and search are pure and in memory; store.py (with its SQLite and PostgreSQL
halves) keeps documents, chunks and vectors beside the conversations; library.py holds
the vectors in memory; indexer.py embeds in a background thread; service.py opens them
all for the server, which knows nothing of HTTP here.
"""
