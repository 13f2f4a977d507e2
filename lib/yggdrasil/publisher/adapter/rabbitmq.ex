defmodule Yggdrasil.Publisher.Adapter.RabbitMQ do
  @moduledoc """
  Publisher adapter of `:rabbitmq` channels: `basic.publish` from the
  publishing process on the namespace's shared connection; `:ok` once the
  broker confirmed the message.
  """
  use Yggdrasil.Broker.Publisher, broker: :rabbitmq
end
