#!/bin/sh
# Reports a failure of the Debian installer on {{ hostname }} to the boot service, so that the
# operator sees `failed` and why, instead of `started` for ever while a dialog waits on a
# console nobody watches. Started in the background by the preseed's early_command; it reads
# the installer's log every 5 s and reports the first failure it recognises, once:
#   * choose-mirror's warnings, shown as "Bad archive mirror" (the mirror is unreachable, or
#     lacks the release);
#   * a step of the installer's main menu that failed ("Configuring 'X' failed");
#   * a step that exits on an error (debootstrap, apt, grub: "error: exiting on error");
#   * an installer component (udeb) the mirror lacks: anna's "package retrieval failed", while
#     the installer waits at "Download installer components". anna does not name the
#     component on that line; net-retriever logs each file it fetches just before ("regular:
#     pool/.../NAME_VERSION_ARCH.udeb ..."), so the reason names the last one of those.
# The reason is kept to letters, digits, spaces and `. _ ~ : , ( ) / -`, spaces sent as %20.
log=/var/log/syslog
while sleep 5; do
  line=$(grep -m1 -E 'choose-mirror\[[0-9]+\]: WARNING \*\*:|main-menu\[[0-9]+\]: WARNING \*\*: Configuring|anna\[[0-9]+\]: WARNING \*\*: package retrieval failed|: error: exiting on error' "$log")
  [ -n "$line" ] || continue
  step=$(echo "$line" | sed -n 's/^.* \([a-z0-9-]*\)\[[0-9]*\]: .*$/\1/p')
  text=$(echo "$line" | sed -e 's/^[^]]*\]: //' -e 's/^WARNING \*\*: //')
  case "$step" in
    choose-mirror) reason="choose-mirror: Bad archive mirror: $text" ;;
    anna)
      # The package name: the udeb file name up to its first `_` (names never hold one).
      udeb=$(sed -n -e '/net-retriever: regular: [^ ]*\.udeb /{s/^.* regular: \([^ ]*\/\)\{0,1\}\([^/_ ]*\)_[^ ]*\.udeb .*$/\2/;h;}' \
        -e '/anna\[[0-9]*\]: WARNING \*\*: package retrieval failed/{x;p;q;}' "$log")
      reason="anna: $text: ${udeb:-unknown component} (Download installer components)" ;;
    *) reason="${step:-installer}: $text" ;;
  esac
  reason=$(echo "$reason" | sed -e 's/[^A-Za-z0-9._~:,()\/ -]//g' -e 's/ /%20/g' | cut -c1-400)
  for try in 1 2 3 4 5; do
    wget -q -O /dev/null {{ failed_url | shell }}"&reason=$reason" && break
    sleep 5
  done
  exit 0
done
