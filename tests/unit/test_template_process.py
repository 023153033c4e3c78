"""The local worker's template process lets go of its socket and process however it ends."""

from __future__ import annotations

import asyncio
import os
import signal

from ketch.worker._template import TemplateProcess


def test_close_stops_the_template_and_closes_its_socket() -> None:
    async def main() -> None:
        template = TemplateProcess(dict(os.environ))
        sock = await template._ensure()
        process = template._process
        assert process is not None
        await template.close()
        assert sock.fileno() == -1
        assert process.returncode is not None

    asyncio.run(main())


def test_a_template_that_dies_leaves_no_socket_open() -> None:
    async def main() -> None:
        template = TemplateProcess(dict(os.environ))
        sock = await template._ensure()
        process, reader = template._process, template._reader
        assert process is not None and reader is not None
        os.killpg(process.pid, signal.SIGKILL)
        await asyncio.wait_for(reader, 10)
        assert sock.fileno() == -1
        # The next spawn starts a fresh template.
        assert await template._ensure() is not sock
        await template.close()

    asyncio.run(main())
