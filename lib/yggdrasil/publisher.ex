defmodule Yggdrasil.Publisher do
  @moduledoc false
  # Publishing for adapters that publish through processes (all but the
  # native `:elixir` one): one pool of publisher adapter processes per
  # adapter and namespace, started on first use, sized by
  # `Yggdrasil.Config.publisher_options!/1`.

  alias Yggdrasil.Channel
  alias Yggdrasil.Publisher.Pool

  @names Yggdrasil.Publisher.Names
  @pools Yggdrasil.Publisher.Pools

  @doc false
  def publish(%Channel{adapter: adapter, namespace: namespace} = channel, message, options) do
    with {:ok, pool} <- pool({adapter, namespace}, channel) do
      Pool.transaction(pool, fn publisher ->
        Yggdrasil.Publisher.Adapter.publish(publisher, channel, message, options)
      end)
    end
  catch
    :exit, reason -> {:error, {:publisher_exited, reason}}
  end

  defp pool(key, channel) do
    case Registry.lookup(@names, key) do
      [{pid, _}] ->
        {:ok, pid}

      [] ->
        name = {:via, Registry, {@names, key}}
        base = %Channel{channel | name: nil, metadata: nil}

        case DynamicSupervisor.start_child(@pools, {Pool, {base, name}}) do
          {:ok, pid} -> {:ok, pid}
          {:error, {:already_started, pid}} -> {:ok, pid}
          {:error, reason} -> {:error, {:publisher_not_started, reason}}
        end
    end
  end
end
