#!/bin/sh
# Makes the share's user with the password from the environment, then runs smbd in the foreground.
set -eu
user=${NAS_USER:-nasuser}
: "${NAS_PASSWORD:?set NAS_PASSWORD}"
id "$user" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$user"
sed -i "s/^  valid users = .*/  valid users = $user/" /etc/samba/smb.conf
printf '%s\n%s\n' "$NAS_PASSWORD" "$NAS_PASSWORD" | smbpasswd -s -a "$user" >/dev/null
exec smbd --foreground --no-process-group --debug-stdout
