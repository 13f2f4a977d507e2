# A third-party adapter that takes the process-free path of `:elixir`
# (`delivery: :engine, publish: :caller`) with its own publishing step:
# it counts, in the publishing process, what it published.

defmodule Yggdrasil.Adapter.Direct do
  @moduledoc false
  use Yggdrasil.Adapter, name: :direct, delivery: :engine, publish: :caller
end

defmodule Yggdrasil.Subscriber.Adapter.Direct do
  @moduledoc false
  # Required by the adapter shape; with `delivery: :engine` subscribing
  # never starts it.
  use Yggdrasil.Subscriber.Adapter
  use GenServer

  @impl GenServer
  def init(%{channel: channel}), do: {:ok, channel}
end

defmodule Yggdrasil.Publisher.Adapter.Direct do
  @moduledoc false
  use Yggdrasil.Publisher.Adapter, worker: :stateless

  alias Yggdrasil.Subscriber.Publisher

  @doc false
  # How many messages the calling process published on `:direct` channels.
  def published, do: Process.get(__MODULE__, 0)

  @impl Yggdrasil.Publisher.Adapter
  def publish_in_caller(channel, route, message, options) do
    with {:ok, encoded} <- route.transformer_module.encode(channel, message),
         :ok <- Publisher.deliver(channel, route, encoded, options[:metadata]) do
      Process.put(__MODULE__, published() + 1)
      :ok
    end
  end
end

# Declares `publish: :caller` without `publish_in_caller/4`: refused.
defmodule Yggdrasil.Adapter.CallerWithout do
  @moduledoc false
  use Yggdrasil.Adapter,
    name: :caller_without,
    publish: :caller,
    subscriber: Yggdrasil.Subscriber.Adapter.Direct,
    publisher: Yggdrasil.Publisher.Adapter.CallerWithout
end

defmodule Yggdrasil.Publisher.Adapter.CallerWithout do
  @moduledoc false
  use Yggdrasil.Publisher.Adapter
end
