#!/bin/sh
# The official redis image's start-up: arguments alone or a .conf mean
# redis-server; as root, own /data and drop to the redis user. The official
# binary is built with protected mode off (its Dockerfile patches config.c), so
# other containers may connect without a password; Debian's is not, so the
# stand-in says so on the command line unless the command chose itself.
set -eu
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
exec "$@"
