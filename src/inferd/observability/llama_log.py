"""llama.cpp's own log, through Python logging (so JSON logs stay JSON).

llama-cpp-python installs a log callback that prints llama.cpp's lines to stderr as plain
text, and with an outdated table of levels: a warning passes for an error, so a line like
"llama_init_from_model: model default pooling_type is [-1], but [1] was specified" (when the
embeddings context is created) reached the JSON log as plain text. While a `LlamaLog` is
entered, whole lines go to the `llama-cpp-python` logger instead (whose level the backend
sets: errors only, unless `llama_verbose`), at llama.cpp's level, through inferd's handler.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from types import TracebackType
from typing import Any

import llama_cpp

# ggml_log_level (ggml.h): NONE, DEBUG, INFO, WARN, ERROR, and CONT (continues a line)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING}
_ERROR, _CONT = 4, 5


class LlamaLog:
    """A context: llama.cpp logs through Python logging inside it, as before outside."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("llama-cpp-python")
        self._lock = threading.Lock()  # llama.cpp logs from the threads that load and decode
        self._line = ""
        self._level = logging.INFO
        # llama.cpp holds only a pointer: the callback lives as long as this object
        self._callback = llama_cpp.llama_log_callback(self._receive)
        self._previous = llama_cpp.llama_log_callback()
        self._previous_data = ctypes.c_void_p()

    def __enter__(self) -> LlamaLog:
        llama_cpp.llama_log_get(ctypes.byref(self._previous), ctypes.byref(self._previous_data))
        llama_cpp.llama_log_set(self._callback, None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        llama_cpp.llama_log_set(self._previous, self._previous_data)

    def _receive(self, level: int, text: bytes, user_data: Any) -> None:
        with self._lock:
            if level != _CONT:
                self._level = logging.ERROR if level == _ERROR else _LEVELS.get(level, logging.INFO)
            self._line += text.decode("utf-8", "replace")
            if not self._line.endswith("\n"):
                return
            line, self._line = self._line.rstrip(), ""
            level_now = self._level
        if line and self.logger.isEnabledFor(level_now):
            self.logger.log(level_now, line)
