defmodule Yggdrasil.Subscriber.Adapter.RabbitMQ do
  @moduledoc false
  use Yggdrasil.Broker.Subscriber, broker: :rabbitmq
end
