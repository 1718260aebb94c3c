"""The OpenAI-compatible proxy server (``certaindex serve``). Needs the ``server`` extra."""

from certaindex.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - re-exported lazily: FastAPI is an extra
    from certaindex.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)
