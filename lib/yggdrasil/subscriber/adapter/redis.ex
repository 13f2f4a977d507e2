defmodule Yggdrasil.Subscriber.Adapter.Redis do
  @moduledoc """
  Subscriber adapter of `:redis` channels: one process per channel that
  `PSUBSCRIBE`s its name on the namespace's shared connection.
  """
  use Yggdrasil.Broker.Subscriber, broker: :redis
end
