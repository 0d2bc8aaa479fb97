"""The validation rules of settings sent from the web, as (body part, field it must name) cases.

Shared by the unit tests of `web_config.parse_web_settings` and the route tests of PUT /nas/config and
POST /nas/config/test, so both check the same list. The current connection in these tests is SMB
(`SAVED`), so that the saved-password rules apply.
"""

from __future__ import annotations

SAVED = {"Type": "smb", "Host": "nas.example", "Share": "dicom", "Username": "reader", "Password": "s3cret"}
LOCAL = {"Type": "local", "Path": "/x"}

#: a Connection object that is refused, and the field the answer names
CONNECTION_RULES = [
    ({"Type": "smb", "Share": "d", "Username": "u", "Password": "p"}, "Connection.Host"),
    ({"Type": "smb", "Host": "h", "Username": "u", "Password": "p"}, "Connection.Share"),
    ({"Type": "smb", "Host": "h", "Share": "d", "Password": "p"}, "Connection.Username"),
    ({"Type": "smb", "Host": "h", "Share": "d", "Username": "   ", "Password": "p"}, "Connection.Username"),
    ({"Type": "smb", "Host": "other", "Share": "d", "Username": "u"}, "Connection.Password"),
    ({"Type": "smb", "Host": "\\\\nas\\dicom", "Share": "d", "Username": "u", "Password": "p"}, "Connection.Host"),
    ({"Type": "smb", "Host": "nas", "Share": "dicom/ct", "Username": "u", "Password": "p"}, "Connection.Share"),
    ({"Type": "smb", "Host": "h", "Share": "d", "Username": "u", "Password": "p", "Port": 0}, "Connection.Port"),
    ({"Type": "smb", "Host": "h", "Share": "d", "Username": "u", "Password": "p", "Port": "445"}, "Connection.Port"),
    ({"Type": "local"}, "Connection.Path"),
    ({"Type": "local", "Path": "  "}, "Connection.Path"),
    ({"Type": "nfs", "Path": "/x"}, "Connection.Type"),
    ({"Type": "local", "Path": "/x", "Prot": 1}, "Connection.Prot"),
    ({"Type": "local", "Path": 3}, "Connection.Path"),
    ("local", "Connection"),
]

#: a PUT /nas/config body that is refused, the field named, and words of the message
BODY_RULES = [
    ({}, "Connection", "required"),
    ({"Workers": 4}, "Connection", "required"),
    ({"Connection": LOCAL, "Workers": 0}, "Workers", "between 1 and 64"),
    ({"Connection": LOCAL, "Workers": "8"}, "Workers", "between 1 and 64"),
    ({"Connection": LOCAL, "Workers": True}, "Workers", "between 1 and 64"),
    ({"Connection": LOCAL, "Nope": 1, "Also": 2}, "Also", "unknown settings Also, Nope"),
    ({"Connection": LOCAL, "DataDirectory": "/elsewhere"}, "DataDirectory", "cannot be changed from the web"),
    ({"Connection": LOCAL, "MaxShareHours": 1}, "MaxShareHours", "cannot be changed from the web"),
    ({"Connection": LOCAL, "AllowedRoots": "*"}, "AllowedRoots", "cannot be changed from the web"),
    ({"Connection": LOCAL, "AllowedHosts": ["evil"]}, "AllowedHosts", "cannot be changed from the web"),
]

#: a saved SMB password stays where it was saved: changing one of these needs the password again
IDENTITY_CHANGES = [{"Host": "attacker.example"}, {"Username": "admin"}, {"Domain": "OTHER"},
                    {"Port": 8445}]  # another service of the same host (one that logs what it is sent)
