#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the console's browser test
# (tests/test_console_browser.py), installed as `make test` starts Valkey itself: with
# apt-get when they are missing and this runs as root. Otherwise it says why and exits 1,
# and the browser test is skipped with that reason.
set -u
PACKAGES="chromium chromium-driver fonts-dejavu-core"
have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
have && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "get_chromium: /usr/bin/chromium or /usr/bin/chromedriver missing and not root:" \
    "install the Debian packages $PACKAGES to run the console's browser test"
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "get_chromium: no apt-get here: install chromium and its chromedriver to run the" \
    "console's browser test"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# shellcheck disable=SC2086  # the package list is split on purpose
if ! apt-get install -y -q --no-install-recommends $PACKAGES >"$log" 2>&1; then
  apt-get update -q >>"$log" 2>&1
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $PACKAGES >>"$log" 2>&1
fi
if ! have; then
  echo "get_chromium: apt-get could not install $PACKAGES; its last lines:"
  tail -n 5 "$log"
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "get_chromium: installed $(/usr/bin/chromium --version 2>/dev/null)"
