defmodule Yggdrasil.Subscriber.Adapter.RabbitMQ do
  @moduledoc """
  Subscriber adapter of `:rabbitmq` channels: one process per channel whose
  queue is bound on the namespace's shared connection.
  """
  use Yggdrasil.Broker.Subscriber, broker: :rabbitmq
end
