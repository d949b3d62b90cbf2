"""The engine: llama.cpp's own server engine (through `xllamacpp`) in this process.

llama.cpp's server engine gives us slots, continuous batching over them, a per-slot
prompt cache and chunked prefill; this module gives it token ids and reads its
stream. What stays ours, on purpose:
  - prompts: the chat template renders in our Jinja sandbox, message text never
    becomes control tokens, history is fitted to the context — in `prompt.py`
    (`engine.prompts`, safe from any thread), built before a request reaches here;
  - stop strings (held back until they can no longer start a stop string) and
    cancellation within one token (or one prefill chunk).

It knows nothing about HTTP, JSON bodies of our API or WebSockets. Which slot a
request runs in, and when, is the scheduler's business (`scheduler.py`): `run` is
called from one worker thread per running request.

The engine's own HTTP listener (llama-server's API on a random loopback port, which
xllamacpp always opens) is locked with a random per-process key and used only by
this module, for tokenizing before our own tokenizer has loaded and for slot
save/restore/erase.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..generation import Delta, Done, EngineError, ModelLoadError, Prepared, SamplingParams
from .grammar import engine_schema
from .template import ChatTemplate, TemplateError

if TYPE_CHECKING:
    import http.client

# What llama.cpp's server reports as its chat template when the GGUF has none (its
# built-in ChatML fallback, byte for byte). Only then is the GGUF itself asked whether
# it has a template (~15-40 ms; the default model, whose template differs, skips it).
_LLAMA_CPP_FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)

# tokenizer.ggml.token_type values (llama.h, enum llama_token_type) of the tokens
# only `parse_special` text becomes.
_TOKEN_UNKNOWN, _TOKEN_CONTROL = 2, 3


def _set_kv_type(p: Any, kv_type: str) -> str:
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    if kv_type == "q8_0":
        p.cache_type_k = p.cache_type_v = GGML_TYPE_Q8_0
        p.flash_attn_type = 1  # on: a quantized V cache is read only through flash attention
    return kv_type


# Draft-free speculative decoding, llama.cpp's n-gram "self-speculation": at each step a slot
# looks up its last SPEC_NGRAM tokens earlier in its own prompt and answer, proposes the
# tokens that followed them there (at most SPEC_DRAFT), and one batch checks them all: every
# proposed token the model would have chosen itself is kept, so the answer is the same
# (temperature 0: token for token) and only the speed changes. The modes offered keep their
# n-grams per slot: llama.cpp's "ngram-mod" shares one table among all slots (one owner's
# text would speed up, measurably, another's answer) and "ngram-cache" drafts a fixed 8
# tokens, which the batch bound below cannot shorten. Not per request: this llama.cpp
# compiles its per-request "speculative.*" fields out (tools/server/server-schema.cpp).
SPECULATIVE_MODES = ("off", "ngram-simple", "ngram-map-k", "ngram-map-k4v")
SPEC_NGRAM = 3  # tokens looked up
SPEC_DRAFT = 8  # tokens proposed at most


def _set_speculative(p: Any, mode: str) -> str:
    """Turn on speculative `mode` in params whose n_batch and n_parallel are set."""
    if mode not in SPECULATIVE_MODES:
        raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_MODES)}, got {mode!r}")
    if mode == "off":
        return mode
    import xllamacpp

    # llama.cpp puts every generating slot's token and draft into one batch of
    # max(n_batch, n_parallel) tokens and aborts the process when they do not fit.
    room = max(p.n_batch, p.n_parallel) // p.n_parallel - 1
    if room < 1:
        raise ValueError(f"speculative decoding needs a batch of at least 2 tokens per slot: batch {p.n_batch}, "
                         f"{p.n_parallel} slots")
    p.speculative.types = [getattr(xllamacpp.common_speculative_type,
                                   "COMMON_SPECULATIVE_TYPE_" + mode.upper().replace("-", "_"))]
    lookup = getattr(p.speculative, mode.replace("-", "_"))
    lookup.size_n, lookup.size_m = SPEC_NGRAM, min(SPEC_DRAFT, room)
    return mode


# The slot-save folder of each engine: "<prefix><pid>-<random>" in the temp folder, removed
# when the engine closes; a process that was killed leaves its own behind (half a MB each).
SLOT_DIR_PREFIX = "nanochat-slots-"
FAIR_BATCH = 64  # tokens: the first piece of a prompt prefilled while others stream


def sweep_slot_dirs(folder: str | None = None) -> int:
    """Remove the slot folders whose process is gone; how many. A folder of a live process
    (this one's, another server's) is kept, as is one whose name carries no process id."""
    root = Path(folder or tempfile.gettempdir())
    removed = 0
    for path in root.glob(f"{SLOT_DIR_PREFIX}*-*"):
        pid_text = path.name[len(SLOT_DIR_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


# Bytes per number of each KV cache type (q8_0: blocks of 32 int8 and one f16 scale).
KV_TYPES = {"f16": 2.0, "q8_0": 34 / 32}
GGML_TYPE_Q8_0 = 8  # ggml's type number


def import_after_load() -> None:
    """Import what `Engine()` needs once llama.cpp has loaded (the internal API's HTTP client,
    Jinja for the template): serve's start-up calls it on its main thread while the model
    loads on another, so the loader finds them imported."""
    import http.client  # noqa: F401

    from .template import load_jinja

    load_jinja()


class _InternalAPI:
    """The engine's own HTTP listener, for this module only: loopback, random key.

    One keep-alive connection per thread (http.client connections are not thread-safe).
    """

    def __init__(self, address: str, key: str) -> None:
        # Imported here, after llama.cpp's load: http.client (with email and ssl) costs ~15-25 ms
        # that serve's start-up spends on its other thread meanwhile (import_after_load).
        import http.client

        self._http = http.client
        hostport = address.split("://", 1)[-1]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []  # every thread's, to close them all
        self._conns_lock = threading.Lock()

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._http.HTTPConnection(self.host, self.port, timeout=60)
                with self._conns_lock:
                    self._conns.append(conn)
            try:
                conn.request(method, path, data, self._headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (OSError, self._http.HTTPException):
                conn.close()
                self._local.conn = None
                with self._conns_lock:
                    if conn in self._conns:
                        self._conns.remove(conn)
                if attempt == 2:
                    raise EngineError(f"the engine's internal API did not answer {method} {path}") from None
        result = json.loads(payload) if payload else None
        if resp.status != 200:
            message = result.get("error", {}).get("message") if isinstance(result, dict) else None
            raise EngineError(f"the engine refused {method} {path}: {message or resp.status}")
        return result


class Engine:
    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 4096, parallel: int = 1,
                 kv_size: int | None = None, threads: int | None = None, batch: int = 512,
                 name: str | None = None, chat_template: str | None = None, kv_type: str = "f16",
                 speculative: str = "off", on_native_load: Callable[[], None] | None = None) -> None:
        """Load the model. `n_ctx` is one conversation's context window; `kv_size` is
        the KV cache shared by all `parallel` slots (default: 2 × n_ctx). `chat_template`
        (a Jinja source) replaces the model's own; without either, conversations are
        refused (`NoChatTemplate`) and raw prompts work. `kv_type` "q8_0" stores K and V
        in 8 bits (half the memory of "f16"), with flash attention, which llama.cpp needs
        to read a quantized V. `on_native_load` is called as llama.cpp's own load begins
        (serve's start-up waits for it before its imports: see commands/boot.py)."""
        import xllamacpp  # ~30 ms, no numpy

        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self.threads = threads or os.cpu_count() or 1
        self.parallel = max(1, parallel)
        self.n_ctx = n_ctx
        # The pool is allocated and zeroed at load (8,192 tokens instead of 4,096 cost
        # ~150 ms of start-up and 90 MB here), and each running answer reserves its
        # prompt + max_tokens in it (the scheduler makes answers wait when it is full):
        # two contexts let ten chats with the default 512-token answers run at once.
        self.kv_size = max(kv_size or 2 * n_ctx, n_ctx)
        self.batch = batch
        # The scheduler's first prefill piece while other slots stream (engines/scheduler.py
        # `_prefill`); alone a prompt goes in `batch`-token batches.
        self.fair_batch = min(FAIR_BATCH, batch)
        self._slot_dir = tempfile.mkdtemp(prefix=f"{SLOT_DIR_PREFIX}{os.getpid()}-")
        key = secrets.token_urlsafe(24)
        p = self._params(key, kv_type, speculative)
        from .kv_pages import LoadWindow

        window = LoadWindow()  # what llama.cpp maps while it loads: its KV cache among it
        if on_native_load is not None:
            on_native_load()
        try:
            self._server = xllamacpp.Server(p)
        except (RuntimeError, ValueError, OSError) as e:
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {e}") from None
        window.close()
        self._loaded_ranges = window.ranges
        self._release_lock = threading.Lock()
        self.internal_address = self._server.listening_address
        self._api = _InternalAPI(self.internal_address, key)
        self.closed = False
        props = self._api.call("GET", "/props")
        try:
            self.n_vocab: int | None = int(self._api.call("GET", "/v1/models")["data"][0]["meta"]["n_vocab"])
        except (EngineError, KeyError, IndexError, TypeError, ValueError):
            self.n_vocab = None
        from .prompt import PromptBuilder

        add_bos = bool(self._api.call("POST", "/tokenize", {"content": "", "add_special": True})["tokens"])
        bos_text = props.get("bos_token") or ""
        bos_id = self._api.call("POST", "/tokenize", {"content": bos_text, "parse_special": True,
                                                      "add_special": False})["tokens"][:1]
        source = chat_template if chat_template is not None else self._own_template(props.get("chat_template"))
        try:
            template = ChatTemplate(source, bos_token=bos_text, eos_token=props.get("eos_token") or "",
                                    control_tokens=self._control_texts) if source else None
        except TemplateError as e:
            self.close()
            whose = "the --chat-template" if chat_template is not None else f"the chat template in {self.model_path}"
            raise ModelLoadError(f"{whose} cannot be used: {e}; pass another with --chat-template FILE|NAME") from None
        # Prompts are built apart from the engine (template + tokenizer, any thread).
        self.prompts = PromptBuilder(name=self.name, template=template, n_ctx=n_ctx, n_vocab=self.n_vocab,
                                     add_bos=add_bos, bos_text=bos_text, bos_id=bos_id,
                                     fallback_tokenize=self._engine_tokenize, detokenize=self._detokenize)
        self.kv_cache_bytes: int | None = None  # set by describe_cache()
        # bytes release_unused_memory gave back (resident pages nothing had written, mostly
        # the KV cache's; a page comes back, zeroed, when it is first written)
        self.kv_released_bytes = 0

    def _params(self, key: str, kv_type: str, speculative: str) -> Any:
        """llama.cpp's parameters for this engine (sets kv_type and speculative)."""
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = str(self.model_path)
        p.n_ctx = self.kv_size
        p.n_parallel = self.parallel
        p.kv_unified = True  # one pool: a long conversation may use what idle slots do not
        self.kv_type = _set_kv_type(p, kv_type)
        # The biggest prefill batch: fastest alone (3,070 tokens: 15.6 s at 512 vs 22.6 s at
        # 64); while others stream the scheduler hands a prompt over in smaller pieces.
        p.n_batch = self.batch
        p.n_ubatch = self.batch
        self.speculative = _set_speculative(p, speculative)  # after n_batch and n_parallel
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        # What the first token does not need: a warm-up decode (the shared-prefix
        # computation replaces it), weight repacking (no faster here), fit trials.
        p.warmup = False
        p.no_extra_bufts = True
        p.fit_params = False
        # No RAM prompt cache: a slot's cache is reused only for an exact token prefix
        # (llama.cpp #27148 restored one conversation's cache into another's request).
        p.cache_ram_mib = 0
        p.verbosity = -1
        p.api_keys = [key]  # its HTTP listener is loopback-only and needs this key
        # llama.cpp joins this and the file name without a separator: keep the slash.
        p.slot_save_path = os.path.join(self._slot_dir, "")
        p.endpoint_metrics = False
        return p

    def _own_template(self, reported: str | None) -> str | None:
        """The model's own chat template, or None when its GGUF has none (llama.cpp then
        reports its ChatML fallback, which a base model was never trained on)."""
        if not reported or reported != _LLAMA_CPP_FALLBACK_TEMPLATE:
            return reported or None
        from ..gguf import GGUFError, string_value

        try:
            return string_value(self.model_path, "tokenizer.chat_template") or None
        except GGUFError:  # llama.cpp read the file; we cannot tell: keep what it uses
            return reported

    def describe_cache(self) -> int | None:
        """Bytes of the KV cache the engine allocated (f16 K and V), from the model's
        hyper-parameters; sets `kv_cache_bytes`. Reads the GGUF header (~0.1 s). Called once
        the server is idle, so it also sweeps the slot folders of engines that died."""
        self.kv_cache_bytes = kv_cache_bytes(self.model_path, self.kv_size, self.kv_type)
        sweep_slot_dirs()
        return self.kv_cache_bytes

    def release_unused_memory(self) -> int:
        """Give back the KV cache pages no conversation has written yet (all zeros since
        llama.cpp cleared them; engines/kv_pages.py); returns the bytes. Call it once, with
        every slot held so the engine computes nothing meanwhile (the scheduler does)."""
        from .kv_pages import drop_zero_pages

        with self._release_lock:  # close() waits: the pages read here are freed with the engine
            if self.closed:
                return 0
            ranges, self._loaded_ranges = self._loaded_ranges, []
            dropped = drop_zero_pages(ranges)
            self.kv_released_bytes += dropped
            return dropped

    def close(self) -> None:
        with self._release_lock:
            if self.closed:
                return
            self.closed = True
            self._api.close()
            self._server = None  # xllamacpp stops its loop and joins its thread
            shutil.rmtree(self._slot_dir, ignore_errors=True)

    # -- llama.cpp's tokenizer, over the internal API --------------------------------
    @functools.lru_cache(maxsize=8192)
    def _engine_tokenize(self, text: str, special: bool) -> tuple[int, ...]:
        # ~0.2 ms a call, used until our tokenizer has loaded. Cached: a conversation's
        # parts come back at every turn, and fitting a long one tokenizes the same
        # parts several times.
        body = {"content": text, "add_special": False, "parse_special": special}
        return tuple(self._api.call("POST", "/tokenize", body)["tokens"])

    def _detokenize(self, ids: Sequence[int]) -> str:
        return str(self._api.call("POST", "/detokenize", {"tokens": list(ids)})["content"])

    def _control_texts(self) -> list[str] | None:
        """Texts of the vocabulary's control tokens: what llama.cpp turns into control
        tokens only when asked to (CONTROL and UNKNOWN types; USER_DEFINED ones match
        in any text anyway). Read from the GGUF (~0.1 s), only for a chat template that
        changes message text; None when the file cannot tell."""
        from ..gguf import GGUFError, read

        try:
            meta = read(self.model_path).metadata
            texts, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        except (GGUFError, KeyError, OSError):
            return None
        return [t for t, kind in zip(texts, types) if kind in (_TOKEN_UNKNOWN, _TOKEN_CONTROL)]


    # -- slots --------------------------------------------------------------------
    def fill_slot(self, slot: int, tokens: list[int]) -> None:
        """Evaluate `tokens` into a slot's cache (one token is sampled and dropped)."""
        self._complete({"prompt": tokens, "n_predict": 0, "id_slot": slot, "cache_prompt": True,
                        "stream": True}, lambda chunk: False)

    def save_slot(self, slot: int, name: str) -> None:
        self._api.call("POST", f"/slots/{slot}?action=save", {"filename": name})

    def restore_slot(self, slot: int, name: str) -> None:
        self._api.call("POST", f"/slots/{slot}?action=restore", {"filename": name})

    def erase_slot(self, slot: int) -> None:
        self._api.call("POST", f"/slots/{slot}?action=erase")

    def _complete(self, body: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        import msgspec

        server = self._server
        if server is None:
            raise EngineError("the engine has been shut down")
        failure: list[BaseException] = []
        decode = msgspec.json.decode

        def callback(raw: bytes | str) -> bool:
            # xllamacpp swallows exceptions raised here (and stops): keep them.
            try:
                chunk = decode(raw)
                if "error" in chunk or ("code" in chunk and "message" in chunk and "choices" not in chunk):
                    err = chunk.get("error", chunk)
                    raise EngineError(f"llama.cpp: {err.get('message', err) if isinstance(err, dict) else err}")
                return on_chunk(chunk)
            except BaseException as e:  # noqa: BLE001 - re-raised below, in our thread
                failure.append(e)
                return True

        server.handle_completions(msgspec.json.encode(body), callback)
        if failure:
            raise failure[0]

    # -- generation ---------------------------------------------------------------
    def run(self, prep: Prepared, params: SamplingParams, *, emit: Callable[[Delta | Done], None],
            cancel: threading.Event | None = None, slot: int = -1) -> Done:
        """Generate an answer to a prepared prompt, calling `emit` with each text delta
        and finally the Done (which is also returned). Blocks the calling thread; stops
        within one token (or one prefill chunk) of `cancel` being set."""
        t0 = time.perf_counter()
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        cancel = cancel or threading.Event()
        stops = tuple(s for s in params.stop if s)
        st = _StreamState()
        body = _request_body(prep, params, seed, slot)
        all_probs: list[dict[str, Any]] | None = [] if params.n_probs > 0 else None

        def on_chunk(chunk: dict[str, Any]) -> bool:
            timings = chunk.get("timings")
            if timings:
                st.completion = timings.get("predicted_n", st.completion)
                st.cached = timings.get("cache_n", st.cached)
            choices = chunk.get("choices") or ()
            text = choices[0].get("text") if choices else None
            if all_probs is not None and choices:
                lp = choices[0].get("logprobs")
                if lp and lp.get("content"):
                    st.probs.extend(lp["content"])
            if text:
                now = time.perf_counter()
                if st.t_first is None:
                    st.t_first = now
                st.t_last = now
                st.held += text
                out, st.held, hit = _split_stop(st.held, stops)
                if out or (hit and st.probs):
                    st.parts.append(out)
                    emit(Delta(out, st.take_probs(all_probs)))
                if hit:
                    st.finish, st.stop_hit = "stop", True
                    return True
            finish = choices[0].get("finish_reason") if choices else None
            if finish:
                st.finish = "length" if finish == "length" else "stop"
                return False
            if cancel.is_set():
                st.finish = "cancelled"
                return True
            return False

        if cancel.is_set():
            st.finish = "cancelled"
        else:
            self._complete(body, on_chunk)
        if not st.stop_hit and (st.held or st.probs):
            # Text held back for a stop string that never came (or tokens without text).
            st.parts.append(st.held)
            emit(Delta(st.held, st.take_probs(all_probs)))
        t_end = time.perf_counter()
        n = st.completion
        decode_s = (st.t_last - st.t_first) if (st.t_first and st.t_last and n > 1) else 0.0
        done = Done(
            text="".join(st.parts),
            finish_reason=st.finish,
            prompt_tokens=len(prep.tokens),
            completion_tokens=n,
            dropped_messages=prep.dropped,
            ttft_ms=((st.t_first or t_end) - t0) * 1000.0,
            total_ms=(t_end - t0) * 1000.0,
            decode_tokens_per_s=((n - 1) / decode_s) if decode_s > 0 else 0.0,
            seed=seed,
            cached_tokens=st.cached,
            logprobs=all_probs,
        )
        emit(done)
        return done

    def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams,
                 cancel: threading.Event | None = None) -> Iterator[Delta | Done]:
        """Prepare and run in a helper thread, yielding deltas then one Done (for the
        terminal chat and tests; the server goes through the scheduler)."""
        prep = self.prompts.prepare(messages, params)
        events: queue.SimpleQueue[Delta | Done | BaseException] = queue.SimpleQueue()

        def work() -> None:
            try:
                self.run(prep, params, emit=events.put, cancel=cancel)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                events.put(e)

        threading.Thread(target=work, name="nanochat-generate", daemon=True).start()
        while True:
            ev = events.get()
            if isinstance(ev, BaseException):
                raise ev
            yield ev
            if isinstance(ev, Done):
                return


def kv_cache_bytes(path: str | os.PathLike[str], kv_size: int, kv_type: str = "f16") -> int | None:
    """Bytes of K and V (`kv_type`) for `kv_size` tokens of the model at `path`, from its GGUF
    header (~0.1 s); None when the header does not say. Known before loading: the
    multi-model registry adds it to the file's size to see whether a model fits."""
    from ..gguf import GGUFError, read

    try:
        meta = read(path).metadata
        arch = meta["general.architecture"]
        layers = int(meta[f"{arch}.block_count"])
        heads = int(meta[f"{arch}.attention.head_count"])
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
        head_dim = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // heads))
    except (GGUFError, KeyError, ValueError, ZeroDivisionError, OSError):
        return None
    return int(kv_size * layers * 2 * kv_heads * head_dim * KV_TYPES[kv_type])  # K and V


@dataclass
class _StreamState:
    parts: list[str] = field(default_factory=list)
    held: str = ""  # text not yet sent because it may be the start of a stop string
    completion: int = 0
    cached: int = 0
    t_first: float | None = None
    t_last: float | None = None
    finish: str = "length"
    stop_hit: bool = False
    probs: list[dict[str, Any]] = field(default_factory=list)  # logprobs of tokens not yet sent

    def take_probs(self, into: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if into is None:
            return None
        out, self.probs = self.probs, []
        into.extend(out)
        return out


def _request_body(prep: Prepared, params: SamplingParams, seed: int, slot: int) -> dict[str, Any]:
    """llama-server's `/completion` body for one generation (token ids in, a stream out)."""
    body: dict[str, Any] = {
        "prompt": prep.tokens, "stream": True, "n_predict": prep.max_new, "id_slot": slot,
        "cache_prompt": True, "return_progress": True, "timings_per_token": True,
        "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
        "min_p": params.min_p, "repeat_penalty": params.repeat_penalty,
        "frequency_penalty": params.frequency_penalty, "presence_penalty": params.presence_penalty,
        "seed": seed,
    }
    if params.json_schema is not None:
        body["json_schema"] = engine_schema(params.json_schema)
    if params.n_probs > 0:
        body["n_probs"] = params.n_probs
    if params.logit_bias:
        body["logit_bias"] = [[tok, bias] for tok, bias in params.logit_bias]
    return body


def _split_stop(text: str, stops: tuple[str, ...], *, final: bool = False) -> tuple[str, str, bool]:
    """Split text into (safe to send, held back, stop string found).

    >>> _split_stop("Hello\\nUser:", ("User:",))
    ('Hello\\n', '', True)
    >>> _split_stop("Hello Us", ("User:",))
    ('Hello ', 'Us', False)
    """
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    if final:
        return text, "", False
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return text[: len(text) - keep], text[len(text) - keep:], False
