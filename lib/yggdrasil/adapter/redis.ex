defmodule Yggdrasil.Adapter.Redis do
  @moduledoc """
  The `:redis` adapter: Redis pub/sub through the Rust client inside the NIF.

  A channel's `name` is a binary used as a `PSUBSCRIBE` pattern
  (`"orders.*"` receives every channel that matches; a name without glob
  characters is one channel); publishing does `PUBLISH name payload`.
  Delivered events carry `metadata: %{channel: redis_channel}`, the channel
  they were published on. Settings (`hostname`, `port`, `password`,
  `database`, `username`, `publish_timeout`, `backoff_max`, and the `url`
  and TLS keys every broker takes) are read with
  `Yggdrasil.Config.broker_config/2`:

      config :yggdrasil, redis: [hostname: "redis.local", port: 6379]

      # a hosted server over TLS (`rediss://` = `redis://` with `tls: true`)
      config :yggdrasil, redis: [url: "rediss://default:secret@cache.example.com:6380/0"]

      channel = [name: "orders.*", adapter: :redis, transformer: :json]
      :ok = Yggdrasil.subscribe(channel)
      # {:Y_CONNECTED, _} once Redis confirmed the subscription

  All channels and publishers of a namespace share one subscribing and one
  publishing connection. Redis pub/sub is at-most-once: what is published
  while a connection is down is lost.
  """
  use Yggdrasil.Adapter, name: :redis, publish: :caller
end
