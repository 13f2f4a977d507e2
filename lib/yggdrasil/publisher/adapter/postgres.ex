defmodule Yggdrasil.Publisher.Adapter.Postgres do
  @moduledoc """
  Publisher adapter of `:postgres` channels: `pg_notify` from the publishing
  process on the namespace's shared connection; `:ok` once it returned.
  """
  use Yggdrasil.Broker.Publisher, broker: :postgres
end
