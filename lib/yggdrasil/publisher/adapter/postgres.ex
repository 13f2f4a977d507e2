defmodule Yggdrasil.Publisher.Adapter.Postgres do
  @moduledoc false
  use Yggdrasil.Broker.Publisher, broker: :postgres
end
