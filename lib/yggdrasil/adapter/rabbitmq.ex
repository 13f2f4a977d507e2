defmodule Yggdrasil.Adapter.RabbitMQ do
  @moduledoc """
  The `:rabbitmq` adapter: AMQP 0-9-1 through the Rust client inside the NIF.

  A channel's `name` is `{exchange, routing_key}` (two binaries). The
  exchange must exist; subscribing binds an exclusive queue (deleted on
  unsubscribe and with the connection) to it with `routing_key` (a topic
  pattern on topic exchanges: `"orders.*"`, `"orders.#"`). Publishing is `basic.publish` to `exchange` with
  `routing_key`, and `:ok` means the broker confirmed it; `publish/3`
  options other than `metadata:` are AMQP properties (`content_type`,
  `content_encoding`, `headers` — a map or keyword list of string/atom keys
  to binary, integer, float or boolean values —, `message_id`,
  `correlation_id`, `reply_to`, `expiration`, `priority`, `timestamp`,
  `type`, `user_id`, `app_id`, `persistent`). Delivered events carry
  `metadata: %{routing_key: binary, message_id: binary | nil, headers: map | nil}`.
  Settings (`hostname`, `port`, `username`, `password`, `virtual_host`,
  `heartbeat`, `publish_timeout`, `backoff_max`, and the `url` and TLS keys
  every broker takes) are read with `Yggdrasil.Config.broker_config/2`:

      config :yggdrasil, rabbitmq: [hostname: "mq.local", virtual_host: "app"]

      # a hosted broker: `amqps://` is TLS, port 5671 by default; the vhost is
      # the percent-encoded path (`%2F` is "/", an empty path is "/")
      config :yggdrasil, rabbitmq: [url: "amqps://app:secret@mq.example.com/app"]

      :ok = Yggdrasil.subscribe(name: {"amq.topic", "orders.*"}, adapter: :rabbitmq)

  A subscription to an exchange that does not exist returns `:ok`, logs a
  warning with the broker's reason and is retried with backoff; the
  connection and the other channels keep working. So is a subscription past
  the 2,000 distinct `{exchange, routing_key}` names a namespace's connection
  consumes at once (one AMQP channel each, of the 2,047 RabbitMQ allows): it
  is consumed once another name is unsubscribed; a namespace of its own
  brings its own connection. Consumed messages are
  acknowledged once handed on for delivery. Queues are exclusive: messages
  in flight when a connection breaks, or published while it is down, are
  not delivered (at-most-once for subscribers); a publish whose connection
  broke before its confirm came back is sent again within `publish_timeout`,
  so that message can arrive twice.
  """
  use Yggdrasil.Adapter, name: :rabbitmq, publish: :caller
end
