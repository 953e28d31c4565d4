"""The one rule for whether a report holds any text, for every model that reads reports.

The web app (``/api/segment``, ``/api/report``), ``lvseg predict`` (``--text`` and the Description column of
``--folder``) and :meth:`lvseg.inference.Segmenter.probabilities` refuse a report that is blank by
:func:`is_blank_report`: no letter or digit in any script. An empty string, spaces, a no-break space, NUL
characters, dots and other punctuation, zero-width spaces or a byte-order mark alone are all blank: a model
would otherwise read them as a report and answer as confidently as for a real one. Models that do not read text
never call it.
"""

from __future__ import annotations

#: What a blank report lacks, for error messages.
BLANK_REPORT = "it holds no letters or digits"


def is_blank_report(text: object) -> bool:
    """True when ``text`` is not a string or holds no letter or digit (``str.isalnum``, any script)."""
    return not isinstance(text, str) or not any(character.isalnum() for character in text)
