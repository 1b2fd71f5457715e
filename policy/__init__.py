import warnings as _warnings

# peft 0.21 calls transformers 5's deprecated `is_gradient_checkpointing` on every adapter load: not ours to fix, and
# it would otherwise print on every checkpoint load in a robot service's log.
_warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
