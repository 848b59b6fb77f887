"""Widgets bound to the URL with their defaults included, so a copied link reopens exactly the same view.

Streamlit's own `bind="query-params"` drops a value from the URL while it equals the widget's default, so a link
shared today silently changes meaning when a default changes tomorrow (a new default checkpoint, a new data span).
`url_widget` writes every bound value, default or not, and reads it back when a link is opened.

Use it in place of a widget call, passing the widget function, the same label and keyword arguments, a `key` (the
query parameter's name) and the `default` (the value shown when the URL does not say)::

    from views.url_state import url_widget

    threshold = url_widget(st.slider, "Threshold", key="bt_threshold", default=0.02,
                           min_value=0.0, max_value=0.1, step=0.005)
    window = url_widget(st.select_slider, "Window", key="ll_window", default=250, options=[50, 100, 250, 500])
    asset = url_widget(st.selectbox, "Asset", key="fc_asset", default="BTC", options=["BTC", "SPY"])
    when = url_widget(st.slider, "Bar", key="lb_bar", default=some_datetime, min_value=..., max_value=...)

Rules (read these before using it):
- Do NOT pass `value=`, `index=` or `default=` to the widget itself: the helper sets the value through
  st.session_state (Streamlit warns when both are given). Pass `options=` as usual for choice widgets.
- Give every widget a key unique across the app: it is the query parameter's name (prefix a page's keys, e.g.
  `bt_`, `ll_`, `lb_`); the frame owns `symbols`, `interval`, `dates`, `checkpoint`.
- The value read from the URL is parsed to the type of `default` (str, int, float, bool, date, datetime, or a
  tuple/list of them for range sliders and multiselects) or, for choice widgets, matched against the options by
  their text. A URL value that does not parse or is not allowed (outside min/max, not an option) is ignored and
  the default is used instead; pass `valid=` (value -> bool) for any other rule.
- The value stays in st.session_state[key] across reruns like any keyed widget; a page that is left drops its
  widgets' values (Streamlit's usual rule), and the URL of the next page carries only that page's settings plus
  the frame's.
- Works inside st.fragment (a slider's move writes the URL in the fragment's rerun) and with AppTest
  (`at.query_params[key] = ...` before `run()`; read back `at.query_params`).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st


def to_url(value: Any) -> list[str]:
    """The query-parameter strings of a widget value (a list: ranges and multiselects repeat the parameter)."""
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in to_url(item)]
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, dt.datetime):
        return [value.strftime("%Y-%m-%dT%H:%M") if value.second == 0 and value.microsecond == 0 else value.isoformat()]
    if isinstance(value, dt.date):
        return [value.isoformat()]
    if isinstance(value, float):
        return [repr(value)]
    return [str(value)]


def _parse_one(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, dt.datetime):
        parsed = dt.datetime.fromisoformat(text)
        return parsed.replace(tzinfo=like.tzinfo) if parsed.tzinfo is None else parsed
    if isinstance(like, dt.date):
        return dt.date.fromisoformat(text)
    return text


def from_url(texts: Sequence[str], default: Any, options: Sequence[Any] | None = None) -> Any:
    """The widget value of query-parameter strings, shaped like `default`; raises ValueError when they do not fit."""
    if options is not None:
        by_text = {to_url(option)[0] if to_url(option) else "": option for option in options}
        picked = [by_text[text] for text in texts if text in by_text]
        if len(picked) != len(texts):
            raise ValueError(f"not among the options: {texts}")
        if isinstance(default, (list, tuple)):
            return type(default)(picked) if isinstance(default, tuple) else picked
        if len(picked) != 1:
            raise ValueError(f"one value expected: {texts}")
        return picked[0]
    if isinstance(default, (list, tuple)):
        like = default[0] if len(default) else ""
        parsed = [_parse_one(text, like) for text in texts]
        if isinstance(default, tuple):
            if len(parsed) != len(default):
                raise ValueError(f"{len(default)} values expected: {texts}")
            return tuple(parsed)
        return parsed
    if len(texts) != 1:
        raise ValueError(f"one value expected: {texts}")
    return _parse_one(texts[0], default)


def _in_bounds(value: Any, low: Any, high: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return all((low is None or item >= low) and (high is None or item <= high) for item in items)
    except TypeError:
        return False


def _allowed(value: Any, options: Sequence[Any] | None, low: Any, high: Any, valid: Callable[[Any], bool] | None) -> bool:
    if options is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(item not in options for item in items):
            return False
    if not _in_bounds(value, low, high):
        return False
    return valid is None or bool(valid(value))


def write_url(key: str, value: Any) -> None:
    """Put `value` in the URL under `key` (only when it differs: each write is a message to the browser)."""
    texts = to_url(value)
    if st.query_params.get_all(key) != texts:
        if texts:
            st.query_params[key] = texts if len(texts) > 1 or isinstance(value, (list, tuple)) else texts[0]
        elif key in st.query_params:
            del st.query_params[key]


def initial_value(key: str, default: Any, *, options: Sequence[Any] | None = None, min_value: Any = None,
                  max_value: Any = None, valid: Callable[[Any], bool] | None = None) -> Any:
    """Seed st.session_state[key] before its widget is drawn: the value it already has when still allowed, else the
    URL's when it parses and is allowed, else `default`. Returns the seeded value."""
    if key in st.session_state and _allowed(st.session_state[key], options, min_value, max_value, valid):
        return st.session_state[key]
    value = default
    texts = st.query_params.get_all(key)
    if texts:
        try:
            parsed = from_url(texts, default, options)
        except (ValueError, TypeError):
            parsed = None
        if parsed is not None and _allowed(parsed, options, min_value, max_value, valid):
            value = parsed
    st.session_state[key] = value
    return value


def url_widget(widget: Callable[..., Any], label: str, *, key: str, default: Any,
               valid: Callable[[Any], bool] | None = None, **kwargs: Any) -> Any:
    """Draw `widget(label, key=key, **kwargs)` with its value taken from the URL (else `default`) and written back
    to the URL on every run, default included. See the module docstring for the rules."""
    for forbidden in ("value", "index", "default", "bind"):
        if forbidden in kwargs:
            raise TypeError(f"url_widget: pass the default as default=, not {forbidden}= (key {key!r})")
    initial_value(key, default, options=kwargs.get("options"), min_value=kwargs.get("min_value"),
                  max_value=kwargs.get("max_value"), valid=valid)
    value = widget(label, key=key, **kwargs)
    write_url(key, value)
    return value
