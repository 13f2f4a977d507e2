defmodule Yggdrasil.Subscriber.Adapter.Postgres do
  @moduledoc false
  use Yggdrasil.Broker.Subscriber, broker: :postgres
end
