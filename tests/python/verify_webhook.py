"""Independent check of docfleet's webhook signatures, for tests/tests/webhooks.rs.

Reads {"secret", "body_b64", "headers"} on stdin; verifies the Standard Webhooks signature with
the `standardwebhooks` package and LC-Signature with Python's own hmac; exits 0 when both hold.
"""
import base64
import hashlib
import hmac
import json
import sys

from standardwebhooks.webhooks import Webhook

req = json.load(sys.stdin)
secret = req["secret"]
body = base64.b64decode(req["body_b64"])
headers = req["headers"]

# Standard Webhooks: a plain secret is used as raw key bytes, i.e. whsec_ + base64(secret).
Webhook("whsec_" + base64.b64encode(secret.encode()).decode()).verify(body, headers)

expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
if not hmac.compare_digest(expected, headers["lc-signature"]):
    sys.exit(f"LC-Signature mismatch: {headers['lc-signature']} != {expected}")
print("signatures ok")
