defmodule Yggdrasil.Adapter.RabbitMQ do
  @moduledoc false
  use Yggdrasil.Adapter, name: :rabbitmq, publish: :caller
end
