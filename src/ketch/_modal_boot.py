"""The alias that plain ``python`` gets after ``ketch modal-alias install``.

``ketch modal-alias install`` copies this file into site-packages as
``_ketch_modal_alias.py`` beside a ``ketch-modal-alias.pth`` that imports it at
every interpreter start. It costs a class definition: ketch itself is imported
only when ``modal`` is. The finder goes last on ``sys.meta_path``, so where the
real ``modal`` package is installed, plain Python imports it (ketch's commands
and containers still run ``import modal`` as ketch: ``ketch._modal_alias``).
"""

import sys


class KetchModalAlias:
    """Answers ``import modal`` with ketch when nothing else on the path has ``modal``."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "modal" and not fullname.startswith("modal."):
            return None
        try:
            from ketch import _modal_alias
        except ImportError:  # ketch was uninstalled and left this file behind
            return None
        return _modal_alias.find_spec(fullname)


if not any(getattr(f, "__name__", "") == "KetchModalAlias" for f in sys.meta_path):
    sys.meta_path.append(KetchModalAlias)
