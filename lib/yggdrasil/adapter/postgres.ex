defmodule Yggdrasil.Adapter.Postgres do
  @moduledoc false
  use Yggdrasil.Adapter, name: :postgres, publish: :caller
end
