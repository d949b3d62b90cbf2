"""Documents: parse (txt/md/html/pdf/docx), chunk by the embedder's tokens, search (hybrid).

This room turns uploaded files into chunks and finds the chunks that answer a query.
Everything here is pure and in memory: no server, no database. The stores keep chunks
and vectors; the server calls these functions.
"""
