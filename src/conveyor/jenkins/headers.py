"""``X-Jenkins`` on every response, as Jenkins sends it: clients such as
python-jenkins's ``get_version()`` read it from the instance's root page."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.core.jenkins_compat import JENKINS_VERSION

_HEADER = (b"x-jenkins", JENKINS_VERSION.encode())


class JenkinsVersionHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER[0]]
                message = {**message, "headers": [*headers, _HEADER]}
            await send(message)

        await self.app(scope, receive, with_header)
