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
    # The alias and the module of an adapter share one pool.
    with {:ok, module} <- Yggdrasil.Registry.get_publisher_module(adapter),
         {:ok, pool} <- pool({module, namespace}, channel) do
      Pool.transaction(pool, fn publisher ->
        Yggdrasil.Publisher.Adapter.publish(publisher, channel, message, options)
      end)
    end
  catch
    :exit, reason -> {:error, {:publisher_exited, reason}}
    :error, reason -> {:error, {:publisher_failed, reason}}
  end

  @doc false
  # The pool of the channel's adapter and namespace, if it was started.
  def whereis(%Channel{adapter: adapter, namespace: namespace}) do
    with {:ok, module} <- Yggdrasil.Registry.get_publisher_module(adapter),
         [{pid, _}] <- Registry.lookup(@names, {module, namespace}) do
      pid
    else
      _ -> nil
    end
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
          {:error, {:publisher_not_started, _} = reason} -> {:error, reason}
          {:error, reason} -> {:error, {:publisher_not_started, reason}}
        end
    end
  end
end
