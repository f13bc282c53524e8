"""Textual's Footer, recomposed at most once per refresh: focus, stack and binding changes arrive in bursts
and each would rebuild every key (most of the time it takes to open a screen)."""

from __future__ import annotations

from textual.widgets import Footer as _Footer


class Footer(_Footer):
    _pending = False

    def bindings_changed(self, screen) -> None:  # type: ignore[override]
        self._bindings_ready = True
        if not screen.app.app_focus or not self.is_attached or screen is not self.screen or self._pending:
            return
        self._pending = True
        self.call_after_refresh(self._recompose_once)

    async def _recompose_once(self) -> None:
        self._pending = False
        await self.recompose()
