import pytest

from react_core.knowledge.download import _reason


@pytest.mark.parametrize(
    "message,reason",
    [  # img2dataset's own status messages, as its *_stats.json files hold them
        ("HTTP Error 404: Not Found", "http_404"),
        ("HTTP Error 503: Service Unavailable", "http_error"),
        ("timed out", "timeout"),
        ("<urlopen error timed out>", "timeout"),
        ("<urlopen error [Errno 111] Connection refused>", "connection"),
        ("Image decoding error", "decode_error"),
        ("cannot identify image file <_io.BytesIO object at 0x7f>", "decode_error"),
        ("image too small", "other"),
    ],
)
def test_failure_messages_group_into_reasons(message, reason):
    assert _reason(message) == reason
