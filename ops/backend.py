"""Backend choice shared by the torch and paddle entry points: build the kernel lazily, fall back once."""
import logging

BACKENDS = ("auto", "reference", "kernel")
logger = logging.getLogger("ops")


class LazyKernel:
    """The compiled op of one framework, built on first use; a failure is remembered so it is tried once."""

    def __init__(self, framework):
        self.framework = framework
        self.module = None
        self.error = None

    def load(self):
        """The op's module; RuntimeError (one line, why) if it cannot be built."""
        if self.module is None:
            if self.error is not None:
                raise RuntimeError(self.error)
            try:
                from ops import build
                self.module = build.load(self.framework)
            except Exception as exc:  # any build or import failure is reported the same way
                reason = next(iter(str(exc).splitlines()), "")  # one line for the log
                self.error = f"{self.framework} ms_deform_attn kernel unavailable: {type(exc).__name__}: {reason}"
                raise RuntimeError(self.error) from exc
        return self.module

    def resolve(self, backend):
        """'auto' / 'reference' / 'kernel' -> 'reference' or 'kernel'; 'auto' warns once if the build fails."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "auto":
            return backend
        if self.error is not None:
            return "reference"
        try:
            self.load()
            return "kernel"
        except RuntimeError as exc:
            logger.warning("%s; using the grid_sample reference", exc)
            return "reference"
