defmodule Yggdrasil.Adapter.Postgres do
  @moduledoc """
  The `:postgres` adapter: PostgreSQL `LISTEN`/`NOTIFY` through the Rust
  client inside the NIF.

  A channel's `name` is a binary, the `LISTEN` channel, quoted as an
  identifier (any case and characters, at most 63 bytes). Publishing runs
  `SELECT pg_notify($1, $2)` with parameters; a payload must be valid UTF-8
  and shorter than 8000 bytes. Delivered events carry
  `metadata: %{channel: name}`. Settings (`hostname`, `port`, `username`,
  `password`, `database`, `sslmode`, `publish_timeout`, `backoff_max`, and
  the `url` and TLS keys every broker takes) are read with
  `Yggdrasil.Config.broker_config/2`:

      config :yggdrasil, postgres: [hostname: "db.local", database: "app"]

      # a hosted server: TLS, the server's certificate and name verified
      config :yggdrasil,
        postgres: [url: "postgres://app:secret@db.example.com/app?sslmode=verify-full"]

  A `url` is read as libpq reads it (`postgres://` or `postgresql://`,
  percent-encoded parts, params `sslmode` and `sslrootcert`). `sslmode` has
  libpq's meaning: `disable`, `prefer` (TLS when the server offers it),
  `require` (TLS, server not verified), `verify-ca` (chain verified),
  `verify-full` (chain and host name verified); without it, `tls: true`
  means `verify-full` (or `require` with `tls_verify: :verify_none`).

      :ok = Yggdrasil.subscribe(name: "Orders", adapter: :postgres)
      # {:Y_CONNECTED, _} once LISTEN returned

  All channels and publishers of a namespace share one listening and one
  publishing connection. NOTIFY is at-most-once across reconnects: what is
  notified while the listening connection is down is lost.
  """
  use Yggdrasil.Adapter, name: :postgres, publish: :caller
end
