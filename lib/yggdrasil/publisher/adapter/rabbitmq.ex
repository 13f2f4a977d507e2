defmodule Yggdrasil.Publisher.Adapter.RabbitMQ do
  @moduledoc false
  use Yggdrasil.Broker.Publisher, broker: :rabbitmq
end
