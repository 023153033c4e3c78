"""The client's half of ``with_options``: options checked before anything is sent.

The control plane makes the variant (``ketch.server.variants``) and checks them again.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._spec import option_fields


def option_set(
    *,
    secrets: Any,
    volumes: Any,
    region: Any,
    cloud: Any,
    **options: Any,
) -> tuple[dict[str, Any], list[Any] | None, dict[str, Any] | None]:
    """``(spec fields, Secrets or None, Volumes or None)`` for ``with_options(**options)``."""
    from ._secret import check_secrets
    from .app import check_volumes

    if region is not None or cloud is not None:
        warnings.warn(
            "with_options(region=, cloud=): ketch places containers on its own machines; ignored",
            stacklevel=3,
        )
    fields = option_fields(**options)
    secret_list = check_secrets(secrets) if secrets is not None else None
    volume_map = check_volumes(volumes) if volumes is not None else None
    return fields, secret_list, volume_map
