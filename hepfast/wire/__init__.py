"""The HEP wire format: the codec (compiled `_codec` and its pure-Python twin `pycodec`), the chunk
table, the SIP scanner twin, hashes and the slow-path packet view. Knows nothing of switching."""
