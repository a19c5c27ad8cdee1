"""Who may do what on the OPC UA server (edge/opcua.py): anonymous clients read, named ones act.

Anything that changes the line over the network needs credentials (the house rule of every served port), so:

- anonymous sessions may browse, read and subscribe (states, alarms, ResultReady events) and nothing else: a Write,
  a method Call (PrepareRecipe, StartContinuous, Stop...), a history update or a node change is answered
  BadUserAccessDenied before it reaches the address space;
- a session that logs in with the user name and password given (`--opcua-user`, `--opcua-password-file` or
  $MINERALNET_OPCUA_PASSWORD) or with a client certificate listed by `--opcua-trust` may also call the methods;
- a wrong user name or password is refused at login (BadUserAccessDenied); an unlisted certificate only reads.

Without a password or trusted certificate every session is read-only. A password crosses the network in clear
unless the server has a certificate (`--opcua-cert`, `--opcua-key`: the Basic256Sha256 endpoints then encrypt it),
which is why the server binds 127.0.0.1 unless told otherwise.
"""

import argparse
import hmac
import os

PASSWORD_ENV = "MINERALNET_OPCUA_PASSWORD"


def read_password(path):
    """argparse type of --opcua-password-file: the file's first line, or one line naming the file and the fix."""
    try:
        with open(path) as handle:
            password = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"'{path}' cannot be read ({getattr(error, 'strerror', None) or error}): "
                                         "pass a file holding the password on its first line.") from None
    if not password:
        raise argparse.ArgumentTypeError(f"'{path}' has an empty first line: write the password on it.")
    return password


def certificate_file(path):
    """argparse type of the certificate flags: a readable PEM or DER certificate."""
    try:
        load_certificate(path)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"'{path}' is not a readable PEM or DER certificate "
                                         f"({getattr(error, 'strerror', None) or error}): pass the .pem or .der file."
                                         ) from None
    return path


def key_file(path):
    """argparse type of --opcua-key: a readable file (its format is checked by asyncua when the server starts)."""
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"'{path}' cannot be read: pass the server certificate's private key "
                                         "(.pem).")
    return path


def load_certificate(path):
    from cryptography import x509

    with open(path, "rb") as handle:
        data = handle.read()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def add_options(parser):
    """The OPC UA row's own flags (edge/served.py)."""
    parser.add_argument("--opcua-user", default="operator",
                        help="user name that may call the OPC UA methods (default: operator)")
    parser.add_argument("--opcua-password-file", type=read_password, metavar="FILE", dest="opcua_password",
                        help="file whose first line is --opcua-user's password (default: $MINERALNET_OPCUA_PASSWORD; "
                             "none and no --opcua-trust: the server is read-only)")
    parser.add_argument("--opcua-cert", type=certificate_file, metavar="CERT",
                        help="the server's certificate (PEM or DER): adds Basic256Sha256 endpoints that encrypt")
    parser.add_argument("--opcua-key", type=key_file, metavar="KEY.pem", help="--opcua-cert's private key")
    parser.add_argument("--opcua-trust", type=certificate_file, metavar="CERT", action="append", default=[],
                        help="a client certificate allowed to call the methods (repeat for several)")


class Access:
    """asyncua's user manager (who logs in as what) and permission ruleset (what each may send)."""

    def __init__(self, user=None, password=None, trusted=()):
        from asyncua import ua
        from asyncua.crypto.permission_rules import USER_TYPES, User, UserRole

        self._user, self._password = user, password
        self._trusted = [load_certificate(path) for path in trusted]
        self._anonymous, self._named = User(role=UserRole.Anonymous), UserRole.User
        self._User = User
        acting = {ua.ObjectIds.WriteRequest_Encoding_DefaultBinary, ua.ObjectIds.CallRequest_Encoding_DefaultBinary}
        self._allowed = {
            UserRole.User: {ua.NodeId(t) for t in USER_TYPES},
            UserRole.Anonymous: {ua.NodeId(t) for t in USER_TYPES if t not in acting},
        }

    @property
    def methods_enabled(self):
        return bool(self._password or self._trusted)

    def get_user(self, iserver, username=None, password=None, certificate=None):
        """The session's user, or None to refuse the login.

        asyncua passes the secure channel's client certificate with every login, so a trusted certificate makes a
        named user whatever the token; otherwise a user name must come with its password, and a session with
        neither (anonymous, or an untrusted certificate) only reads.
        """
        if certificate and self._trusted_certificate(certificate):
            return self._User(role=self._named, name="certificate")
        if username is None and password is None:
            return self._anonymous
        password = password.decode() if isinstance(password, bytes) else password
        if (self._password and username == self._user
                and hmac.compare_digest((password or "").encode(), self._password.encode())):
            return self._User(role=self._named, name=username)
        return None

    def _trusted_certificate(self, certificate):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        if isinstance(certificate, bytes):
            try:
                certificate = x509.load_der_x509_certificate(certificate)
            except ValueError:
                return False
        der = certificate.public_bytes(Encoding.DER)
        return any(trusted.public_bytes(Encoding.DER) == der for trusted in self._trusted)

    def check_validity(self, user, action_type_id, body):
        """PermissionRuleset: may `user` send a request of this type?"""
        return action_type_id in self._allowed.get(user.role, ())
