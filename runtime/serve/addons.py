"""LoRA addons on a running CPU engine: registered, loaded on first use, evicted, unloaded, without a restart.

As trtllm-serve's multi-LoRA (`lora_config`): the engine keeps at most `max_loras` adapters resident in the model
(the least recently used one that no running request needs is evicted to load another) and loads an adapter from its
`lora_path` on first use. An adapter is checked before it is accepted with the same rules as at build time
(runtime/model_build/adapters.py: a PEFT LoRA, rank at most the engine's `max_lora_rank`, target modules trtllm's
LoRA patches, every tensor matching the base checkpoint), so a bad one is a 400 at registration, never a failure in
the middle of a request.

Endpoints (vLLM's names for runtime LoRA management; trtllm-serve loads from `lora_request.lora_path` instead and has
no unload, adapters leave its cache by LRU):
- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: check and register (listed in /v1/models at once; loaded
  into the model on the first request). 200, or 400 naming what is wrong with the adapter.
- `POST /v1/unload_lora_adapter {"lora_name"}`: unlisted at once (its requests are 404), removed from the model and
  its cached KV blocks dropped once no running request uses it. 200, or 404 for an unknown name.

The gateway learns the listed addons from each replica's /v1/models at every health check; `byoc addons add` waits
for that before it returns, so the first request for a new addon is served.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from byoc.errors import ByocError

log = logging.getLogger("byoc.engine.addons")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter forward pass
# trtllm's LoraConfig.max_lora_rank default is 64; byoc's plan sets it from the deployment's addons.
MAX_LORA_RANK = 64


class LoraSlots:
    """Known adapters (name -> folder), the resident ones (in the model, least recently used first), and the loads.

    `known` is the engine's `Generator.addons` (what /v1/models lists). Registration runs on the event loop; loading,
    eviction and unloading run on the generation thread, which owns the model.
    """

    def __init__(
        self,
        base_dir: Path,
        known: dict[str, Path],
        max_loras: int | None,
        max_lora_rank: int,
        registry: CollectorRegistry,
        base_name: str = "",
    ) -> None:
        self.base_dir = base_dir
        self.base_name = base_name  # the model id /v1/models lists: an adapter under that name would shadow it
        self.known = known
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.resident: OrderedDict[str, Path] = OrderedDict()
        self.pending_unload: set[str] = set()
        self.peft = False  # the model is a PeftModel (an adapter was loaded once)
        self._lock = threading.Lock()
        self.loads = Counter(
            "byoc_engine_lora_adapter_loads",
            "LoRA adapters loaded into the model (first use or after eviction).",
            registry=registry,
        )
        self.evictions = Counter(
            "byoc_engine_lora_adapter_evictions",
            "Resident adapters evicted to load another (max_loras).",
            registry=registry,
        )
        resident = Gauge("byoc_engine_lora_adapters_resident", "LoRA adapters in the model now.", registry=registry)
        resident.set_function(lambda: len(self.resident))

    # -- the event loop --------------------------------------------------------------------------------------
    def register(self, name: str, folder: Path) -> None:
        """Check an adapter against the base checkpoint and the engine's LoRA settings; list it.

        Raises ByocError (the message names what is wrong) for a bad name or adapter.
        """
        from byoc.names import addon_id_problem
        from runtime.model_build.adapters import validate_adapter

        problem = addon_id_problem(name)
        if problem:
            raise ByocError("lora_name", problem, "rename it")
        if name == self.base_name:
            raise ByocError("lora_name", f"{name!r} is the base model's name", "give the adapter a name of its own")
        if (folder / "manifest.json").is_file():  # built by `byoc addons add`: every file as it was hashed
            from runtime.model_build.artifacts import verify_folder

            verify_folder(folder)
        validate_adapter(folder, name, self.max_lora_rank, self.base_dir, "lora_path")
        with self._lock:
            self.pending_unload.discard(name)
            self.known[name] = folder

    def unregister(self, name: str) -> bool:
        """Unlist an adapter now; the generation thread removes it from the model. False if it was not known."""
        with self._lock:
            if self.known.pop(name, None) is None:
                return False
            self.pending_unload.add(name)
        return True

    # -- the generation thread -------------------------------------------------------------------------------
    def load_initial(self, model: Any) -> Any:
        """The adapters given at start-up, up to `max_loras` of them (the others load on first use)."""
        for name in list(self.known)[: self.max_loras]:
            model = self._load(model, name, self.known[name])
        return model

    def ensure(self, model: Any, name: str, busy: set[str]) -> Any:
        """The model with adapter `name` resident, evicting the least recently used adapter not in `busy`."""
        if name == BASE_ADAPTER:
            return model
        if name in self.resident:
            self.resident.move_to_end(name)
            return model
        folder = self.known.get(name)
        if folder is None:
            raise KeyError(name)
        # load first, then evict: PEFT keeps a valid active adapter only while one remains
        model = self._load(model, name, folder)
        self.loads.inc()
        if self.max_loras is not None:
            for victim in list(self.resident):
                if len(self.resident) <= self.max_loras:
                    break
                if victim not in busy and victim != name:
                    self._delete(model, victim, name)
                    self.evictions.inc()
        return model

    def apply_unloads(self, model: Any, busy: set[str], prefix_cache: Any) -> Any:
        """Remove unregistered adapters that no running request uses, and their cached KV blocks."""
        if not self.pending_unload:
            return model
        with self._lock:
            ready = {n for n in self.pending_unload if n not in busy}
            self.pending_unload -= ready
        for name in ready:
            if name in self.resident and len(self.resident) == 1:
                model = model.unload()  # the last adapter: back to the plain base model (PEFT needs one adapter)
                self.peft = False
                del self.resident[name]
            elif name in self.resident:
                self._delete(model, name, next(n for n in reversed(self.resident) if n != name))
            if prefix_cache is not None:
                prefix_cache.clear_adapter(name)
            log.info("addon %s unloaded", name)
        return model

    def _delete(self, model: Any, name: str, keep_active: str) -> None:
        model.set_adapter(keep_active)
        model.delete_adapter(name)
        del self.resident[name]

    def _load(self, model: Any, name: str, folder: Path) -> Any:
        if not self.peft:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
            self.peft = True
        else:
            model.load_adapter(str(folder), adapter_name=name)
        model.eval()
        self.resident[name] = folder
        return model


def _bad(message: str, param: str, status: int = 400) -> web.Response:
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    body = {"object": "error", "message": message, "type": kind, "param": param, "code": status}
    return web.json_response(body, status=status)


def routes(slots: LoraSlots, wake: Any) -> list[tuple[str, Any]]:
    """The engine's load/unload endpoints; `wake()` tells the generation thread there is work."""

    async def load(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("the body is not valid JSON", "body")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not path:
            return _bad("lora_name and lora_path are required strings", "lora_name")
        try:
            await asyncio.to_thread(slots.register, name, Path(path))
        except ByocError as error:
            return _bad(f"{error.field}: {error.message}", error.field if error.field == "lora_name" else "lora_path")
        log.info("addon %s registered", name)
        return web.json_response({"lora_name": name, "status": "registered"})

    async def unload(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("the body is not valid JSON", "body")
        name = body.get("lora_name")
        if not isinstance(name, str) or not slots.unregister(name):
            return _bad("lora_name names no adapter of this engine", "lora_name", status=404)
        wake()
        return web.json_response({"lora_name": name, "status": "unloaded"})

    return [("/v1/load_lora_adapter", load), ("/v1/unload_lora_adapter", unload)]
