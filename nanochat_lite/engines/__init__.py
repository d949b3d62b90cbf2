"""The engines' room: everything that turns a prepared prompt into tokens.

    prompt.py          PromptBuilder: chat template + tokenizer + context fitting (any thread)
    template.py        chat templates rendered in a Jinja sandbox
    local.py           llama.cpp's server engine in this process (the only importer of xllamacpp)
    grammar.py         JSON Schema -> grammar, asked of llama.cpp before a request is accepted
    remote.py          any OpenAI-compatible server as the engine (--engine openai:URL)
    openai_client.py   the upstream's wire format: request bodies, stream parsing, its errors
    scheduler.py       slots, the fair queue and the shared system prefix, over one engine

The value types every engine speaks live one floor down, in `nanochat_lite.generation`.
The server imports the scheduler and the prompt builder's interface, never `local`.
"""
