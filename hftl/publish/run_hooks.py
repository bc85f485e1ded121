"""Publishing's run hooks: the model card and plots of every completed run, and the Hub push.

They plug into the loop through :mod:`hftl.training.hooks` (whose registry imports this module on its first
lookup), so the training layer never imports publish. Both act on the main process once the run folder is
complete and the processes have ended: the card (35) first, then the push (40), which uploads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.config import log
from hftl.training.hooks import RunHook, run_hook

if TYPE_CHECKING:
    from hftl.training.context import RunContext


@run_hook(
    "card",
    order=35,
    applies=lambda recipe: recipe.output.card or recipe.hub.push,
    when="output.card is true (the default), or hub.push",
)
class Card(RunHook):
    """The README.md model card and the PNG plots written into the completed run folder."""

    def on_finish(self, ctx: RunContext, final: dict[str, Any]) -> None:
        if ctx.accelerator.is_main_process:
            from hftl.publish.card import write_report
            from hftl.publish.usage import save_example_image

            save_example_image(ctx.run_dir, ctx.data.encoded)  # the input of the card's usage snippet (image runs)
            write_report(ctx.run_dir)


@run_hook("hub", order=40, applies=lambda recipe: recipe.hub.push, when="hub.push is true")
class HubPush(RunHook):
    """The completed run folder pushed to the Hugging Face Hub in one commit (checked before any work)."""

    def check(self, ctx: RunContext) -> None:
        from hftl.publish.hub import check_can_push

        check_can_push()  # fail now, not after hours of training

    def on_finish(self, ctx: RunContext, final: dict[str, Any]) -> None:
        if not ctx.accelerator.is_main_process:  # after the process group ends: the others need not wait
            return
        from hftl.publish.hub import push_run

        hub = ctx.recipe.hub
        log.summary(f"[hub] pushed: {push_run(ctx.run_dir, hub.repo_id, hub.private, hub.revision)}")
