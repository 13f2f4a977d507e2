defmodule Yggdrasil.Publisher.Adapter.Redis do
  @moduledoc """
  Publisher adapter of `:redis` channels: `PUBLISH` from the publishing
  process on the namespace's shared connection; `:ok` once Redis answered.
  """
  use Yggdrasil.Broker.Publisher, broker: :redis
end
