#!/usr/bin/env bash
# Builds the package as a `path:` dependency of throwaway projects, the way
# users of NIF packages expect (issue 11), with the requirement an existing
# Yggdrasil 6 user has: {:yggdrasil, "~> 6.0"}. The dependency is a copy of
# this checkout's files, so the checks below cannot disturb the checkout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The defaults are what is tested; the developer's environment must not leak in.
unset CARGO_TARGET_DIR YGGDRASIL_PREBUILT_NIF YGGDRASIL_BROKERS YGGDRASIL_CARGO_PROFILE
export MIX_ENV=dev
# Every throwaway build leaves the brokers out: a cold build with them costs
# minutes of CI on 2 cores, and `make test` builds them already. The
# selection's way to cargo is checked on the cold build and at the end.
export YGGDRASIL_BROKERS=none

fail() { echo "path dependency: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v from="$1" -v to="$(now)" 'BEGIN { printf "%.1f s", to - from }'; }
began=$(now)

# PATH without any directory that holds a cargo.
no_cargo_path="$(tr ':' '\n' <<<"$PATH" | while read -r dir; do
  [ -x "$dir/cargo" ] || printf '%s:' "$dir"
done)"
PATH="$no_cargo_path" command -v cargo >/dev/null && fail "cannot hide cargo from PATH"

# copy_checkout DIR: tracked and untracked-but-not-ignored files, no build output.
copy_checkout() {
  mkdir -p "$1"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) 2>/dev/null | tar -C "$1" -xf -
}

# new_project DIR DEP: a mix project depending on DEP, with a check script.
new_project() {
  mkdir -p "$1/lib"
  cat >"$1/mix.exs" <<MIX
defmodule UsesYggdrasil.MixProject do
  use Mix.Project

  def project do
    [app: :uses_yggdrasil, version: "0.1.0", deps: [{:yggdrasil, "~> 6.0", path: "$2"}]]
  end

  def application, do: [extra_applications: [:logger]]
end
MIX
  cat >"$1/check.exs" <<'EXS'
{:ok, _} = Application.ensure_all_started(:yggdrasil)
{:ok, channel} = Yggdrasil.gen_channel(name: "path-dep")
:ok = Yggdrasil.subscribe(channel)
receive do
  {:Y_CONNECTED, ^channel} -> :ok
after
  1000 -> raise "no Y_CONNECTED"
end
:ok = Yggdrasil.publish(channel, "through a path dependency")
receive do
  {:Y_EVENT, ^channel, "through a path dependency"} -> IO.puts("subscribed and published: ok")
after
  1000 -> raise "no Y_EVENT"
end
EXS
}

dep="$work/yggdrasil"
copy_checkout "$dep"
new_project "$work/app" "$dep"
cd "$work/app"
lib=_build/dev/lib/yggdrasil/priv/native/libyggdrasil_nif.so
record=_build/dev/lib/yggdrasil/priv/native/libyggdrasil_nif.build
identity() { stat -c '%i %Y' "$lib"; }
touch "$work/copied"

# A path dependency needs no hex: deps.get only records it.
start=$(now)
mix compile >"$work/out" 2>&1 || { cat "$work/out"; fail "cold build"; }
echo "cold build: $(since "$start")"
grep -q 'Compiling NIF.*--no-default-features)' "$work/out" || fail "brokers none: not passed to cargo"
[ -f "$lib" ] || fail "no library at $lib"
grep -q '^fingerprint: ' "$record" || fail "no build record next to the library"
[ -d _build/dev/native/yggdrasil/release ] || fail "cargo did not build under _build/dev"
mix run check.exs

built="$(identity)"
start=$(now)
mix compile >"$work/out" 2>&1 || { cat "$work/out"; fail "unchanged recompile"; }
echo "unchanged recompile: $(since "$start")"
grep -q 'Compiling NIF' "$work/out" && fail "an unchanged tree ran cargo"
[ "$(identity)" = "$built" ] || fail "an unchanged tree reinstalled the library"

mix deps.compile yggdrasil --force >"$work/out" 2>&1
grep -q 'Compiling NIF' "$work/out" || fail "deps.compile --force did not run cargo"
[ "$(identity)" != "$built" ] || fail "deps.compile --force did not reinstall the library"
echo "deps.compile yggdrasil --force: rebuilt"

# Nothing but the installed library and its record in the dependency's sources.
changed="$(cd "$dep" && find . -newer "$work/copied" -type f | sort | tr '\n' ' ')"
[ "$changed" = "./priv/native/libyggdrasil_nif.build ./priv/native/libyggdrasil_nif.so " ] ||
  fail "the build wrote into the dependency's sources: $changed"
[ ! -e "$dep/target" ] || fail "cargo output in the dependency's sources"
echo "dependency sources: no build output"

# Touched but unchanged source, no cargo: the matching library is kept.
touch "$dep/native/yggdrasil_nif/src/lib.rs"
PATH="$no_cargo_path" mix compile >"$work/out" 2>&1 || { cat "$work/out"; fail "no cargo, matching library"; }
grep -q '^warning: yggdrasil: .cargo. was not found on PATH; keeping' "$work/out" || fail "no warning without cargo"
PATH="$no_cargo_path" mix run check.exs >/dev/null 2>&1
echo "no cargo, touched source, matching library: kept with a warning"
# Untouched again, so that cargo has nothing to rebuild below.
touch -r "$work/copied" "$dep/native/yggdrasil_nif/src/lib.rs"

# A release, built on the same cargo target directory, relocated, without cargo.
cp "$lib" "$work/prebuilt.so"
MIX_ENV=prod CARGO_TARGET_DIR="$PWD/_build/dev/native/yggdrasil" mix release --quiet >"$work/out" 2>&1 ||
  { cat "$work/out"; fail "mix release"; }
mv _build/prod/rel/uses_yggdrasil "$work/relocated"
shipped="$(echo "$work"/relocated/lib/yggdrasil-*/priv/native/libyggdrasil_nif.so)"
readelf -S --wide "$shipped" | grep -q '\.debug_' && fail "the release's library carries debug info"
readelf -S --wide "$shipped" | grep -q '\.symtab' || fail "the release's library lost its symbols"
echo "release library: $(stat -c %s "$shipped") bytes, symbols, no debug info"
# Test hooks never ship: neither their NIFs in the library nor their stubs.
hooks='floor_call|floor_send|floor_cpu_stalls|debug_panic'
strings "$shipped" | grep -E "$hooks" >/dev/null && fail "the release's library has test hooks"
"$work/relocated/bin/uses_yggdrasil" eval \
  'Yggdrasil.Native.__info__(:functions) |> Keyword.keys() |> Enum.map_join(" ", &Atom.to_string/1) |> IO.puts()' \
  >"$work/out" 2>&1 || { cat "$work/out"; fail "listing Yggdrasil.Native"; }
grep -q 'publish' "$work/out" || { cat "$work/out"; fail "Yggdrasil.Native not listed"; }
grep -qE "$hooks" "$work/out" && fail "the release's Yggdrasil.Native has test hook stubs"
echo "release: no test hooks in the library or in Yggdrasil.Native"
PATH="$no_cargo_path" "$work/relocated/bin/uses_yggdrasil" eval "Code.eval_file(\"$PWD/check.exs\")"

# A second project, no cargo: a clear message, then the prebuilt library.
dep2="$work/yggdrasil2"
copy_checkout "$dep2"
new_project "$work/app2" "$dep2"
cd "$work/app2"
PATH="$no_cargo_path" mix compile >"$work/out" 2>&1 && fail "built without cargo or library"
grep -q 'cargo. was not found on PATH, and no library' "$work/out" || { cat "$work/out"; fail "no clear message"; }
YGGDRASIL_PREBUILT_NIF="$work/prebuilt.so" PATH="$no_cargo_path" mix compile >"$work/out" 2>&1 ||
  { cat "$work/out"; fail "YGGDRASIL_PREBUILT_NIF"; }
grep -q '^source: prebuilt ' "$record" || fail "prebuilt library not recorded"
cmp -s "$lib" "$work/prebuilt.so" || fail "prebuilt library not installed"
YGGDRASIL_PREBUILT_NIF="$work/prebuilt.so" PATH="$no_cargo_path" mix run check.exs >/dev/null
echo "YGGDRASIL_PREBUILT_NIF without cargo: ok"

cd "$work/app"
# The broker selection is part of the fingerprint, from the config...
mkdir -p config
echo 'import Config; config :yggdrasil, brokers: [:redis]' >config/config.exs
env -u YGGDRASIL_BROKERS PATH="$no_cargo_path" mix compile >"$work/out" 2>&1 &&
  fail "no cargo, other brokers: built"
grep -q 'brokers: redis)' "$work/out" || { cat "$work/out"; fail "config brokers ignored"; }
# ... and the environment wins over it: the library built without brokers matches.
PATH="$no_cargo_path" mix compile >"$work/out" 2>&1 || { cat "$work/out"; fail "brokers none"; }
grep -q 'Compiling NIF' "$work/out" && fail "brokers none: rebuilt although it matched"
grep -q '^brokers: none$' "$record" || fail "brokers none: not recorded"
echo "broker selection: config and YGGDRASIL_BROKERS reach cargo"

echo "path dependency: ok ($(since "$began"))"
