#!/usr/bin/env bash
# Proves the package works as a `path:` dependency of another mix project,
# with the requirement an existing Yggdrasil 6 user has: {:yggdrasil, "~> 6.0"}.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lib"
cat > "$work/mix.exs" <<MIX
defmodule UsesYggdrasil.MixProject do
  use Mix.Project

  def project do
    [app: :uses_yggdrasil, version: "0.1.0", deps: [{:yggdrasil, "~> 6.0", path: "$root"}]]
  end

  def application, do: [extra_applications: [:logger]]
end
MIX

cat > "$work/check.exs" <<'EXS'
{:ok, channel} = Yggdrasil.gen_channel(name: "path-dep")
:ok = Yggdrasil.subscribe(channel)
receive do
  {:Y_CONNECTED, ^channel} -> :ok
after
  1000 -> raise "no Y_CONNECTED"
end
:ok = Yggdrasil.publish(channel, "through a path dependency")
receive do
  {:Y_EVENT, ^channel, "through a path dependency"} -> IO.puts("path dependency: ok")
after
  1000 -> raise "no Y_EVENT"
end
EXS

cd "$work"
# A path dependency needs no hex: deps.get only records it.
MIX_ENV=dev mix run check.exs
