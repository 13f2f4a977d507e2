defmodule Yggdrasil.Subscriber.Adapter.Postgres do
  @moduledoc """
  Subscriber adapter of `:postgres` channels: one process per channel that
  `LISTEN`s on the namespace's shared connection.
  """
  use Yggdrasil.Broker.Subscriber, broker: :postgres
end
