"""What ``import wandb`` finds inside react's img2dataset calls (react_core.knowledge.img2dataset_env): a module that
has nothing. img2dataset imports wandb at its top even when its wandb logging is off (``enable_wandb=False``, as
react always runs it), and importing wandb makes two temporary folders (``*wandb-media``, ``*wandb-artifacts``)
that img2dataset's spawned processes exit without removing: every download left them on the worker."""


def __getattr__(name: str):
    raise ImportError(
        f"wandb.{name}: wandb is not available inside react's downloads (img2dataset runs with enable_wandb=False)"
    )
