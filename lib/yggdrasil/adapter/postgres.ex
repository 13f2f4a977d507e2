defmodule Yggdrasil.Adapter.Postgres do
  @moduledoc """
  The `:postgres` adapter: PostgreSQL `LISTEN`/`NOTIFY` through the Rust
  client inside the NIF.

  A channel's `name` is a binary, the `LISTEN` channel, quoted as an
  identifier (any case and characters, at most 63 bytes). Publishing runs
  `SELECT pg_notify($1, $2)` with parameters; a payload must be valid UTF-8
  and shorter than 8000 bytes. Delivered events carry
  `metadata: %{channel: name}`. Settings (`hostname`, `port`, `username`,
  `password`, `database`, `publish_timeout`, `backoff_max`) are read with
  `Yggdrasil.Config.broker_config/2`:

      config :yggdrasil, postgres: [hostname: "db.local", database: "app"]

      :ok = Yggdrasil.subscribe(name: "Orders", adapter: :postgres)
      # {:Y_CONNECTED, _} once LISTEN returned

  All channels and publishers of a namespace share one listening and one
  publishing connection. NOTIFY is at-most-once across reconnects: what is
  notified while the listening connection is down is lost.
  """
  use Yggdrasil.Adapter, name: :postgres, publish: :caller
end
